"""The proxy's service layer: route, forward, stream back; LoRA cold paths; health and failover.

Per request: parse the body once, compute the routing key (block hashes of the rendered prompt, through
``harness.mm``, the same code the engine uses), let the policy choose, log the decision in the routing-record
contract, and forward the *original bytes* to the worker. A worker that cannot be reached, or that drops the
connection before answering, is marked unhealthy and the request goes to the next-best worker; once bytes have
been streamed to the client nothing is retried.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from multidict import CIMultiDict

from harness.contract import format_mm_startup, format_routing
from harness.mm.assets import SCHEME as ASSET_SCHEME
from harness.mm.families import FAMILIES, family_for_model, get_family
from harness.mm.hashing import block_hashes
from harness.mm.request import render_request
from harness.proxy.adapters import AdapterCatalog, AdapterInfo
from harness.proxy.config import ProxyConfig
from harness.proxy.kv_index import EventIndex, PredictedIndex
from harness.proxy.lora import AdapterManager
from harness.proxy.metrics import ProxyMetrics
from harness.proxy.policies import Candidate, CostWeights, Router
from harness.proxy.workers import RetryableError, WorkerState
from harness.server.kv_events import EventSubscriber
from harness.server.openai import (
    REQUEST_ID_HEADER,
    SERVED_BY_HEADER,
    ApiError,
    error_body,
    parse_json_object,
    sse_event,
)

log = logging.getLogger("harness.proxy")

_HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"})


@dataclass
class RoutingKey:
    hashes: list[int]
    prompt_tokens: int


class Proxy:
    def __init__(self, cfg: ProxyConfig) -> None:
        self.cfg = cfg
        self.metrics = ProxyMetrics()
        self.router = Router(
            cfg.policy,
            CostWeights(cfg.overlap_weight, cfg.prefill_load_weight, cfg.running_weight),
            seed=cfg.seed,
        )
        self.workers = [
            WorkerState(
                index=i,
                url=url,
                predicted=PredictedIndex(
                    cfg.index_capacity_blocks,
                    cfg.event_prediction_ttl_s if url in cfg.kv_events else cfg.index_ttl_s,
                ),
                events=EventIndex() if url in cfg.kv_events else None,
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
        self.assets = cfg.mm.asset_store()
        self.images = cfg.mm.resolver(cfg.model, self.geometry, assets=self.assets) if self.geometry else None
        self.catalog = AdapterCatalog(cfg.adapter_dir, cfg.model, cfg.max_lora_rank, dict(cfg.adapter_registry))
        self.adapters = AdapterManager(self.catalog, cfg.model, cfg.max_loras_per_worker, self.metrics)
        self.session: aiohttp.ClientSession | None = None
        self.created = int(time.time())
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribers: list[EventSubscriber] = []

    # -- life cycle --------------------------------------------------------------------------------------------
    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        self.adapters.session = self.session
        if self.images is not None:
            self.images.session = self.session
        if self.cfg.policy == "kv_mm":
            log.info("%s", format_mm_startup(self.cfg.model, self.cfg.block_size))
        elif self.cfg.policy == "kv_text":
            log.info(
                "Text-only KV routing: images are not in the routing key model=%s block_size=%d",
                self.cfg.model,
                self.cfg.block_size,
            )
        log.info("proxy policy=%s workers=%s", self.cfg.policy, " ".join(self.cfg.workers))
        await self.check_health()
        self._tasks.append(asyncio.create_task(self._health_loop(), name="health"))
        if self.assets is not None:
            self._tasks.append(asyncio.create_task(self._sweep_loop(), name="asset-sweep"))
        for w in self.workers:
            if w.events is not None:
                sub = EventSubscriber(self.cfg.kv_events[w.url])
                self._subscribers.append(sub)
                self._tasks.append(asyncio.create_task(self._consume_events(w, sub), name=f"events-{w.index}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sub in self._subscribers:
            sub.close()
        if self.session is not None:
            await self.session.close()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.health_interval_s)
            await self.check_health()

    async def _sweep_loop(self) -> None:
        assert self.assets is not None
        while True:
            result = await asyncio.to_thread(self.assets.sweep, self.cfg.asset_max_age_s)
            if result.removed:
                log.info(
                    "asset sweep: removed %d derived artifact(s) older than %.0fs, kept %d; %d source(s)",
                    result.removed,
                    self.cfg.asset_max_age_s,
                    result.kept,
                    result.sources,
                )
            await asyncio.sleep(self.cfg.asset_sweep_interval_s)

    async def check_health(self) -> None:
        await asyncio.gather(*(self._check_one(w) for w in self.workers))

    async def _check_one(self, w: WorkerState) -> None:
        assert self.session is not None
        ok = False
        try:
            timeout = aiohttp.ClientTimeout(total=self.cfg.health_timeout_s)
            async with self.session.get(f"{w.url}/health", timeout=timeout) as resp:
                ok = resp.status == 200
                served_by = resp.headers.get(SERVED_BY_HEADER)
                if served_by:
                    w.name = served_by
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self._set_health(w, ok, "health check")

    def _set_health(self, w: WorkerState, ok: bool, why: str) -> None:
        if ok != w.healthy:
            log.log(
                logging.INFO if ok else logging.WARNING,
                "worker %s (%s) is %s (%s)",
                w.name,
                w.url,
                "healthy" if ok else "unhealthy",
                why,
            )
            if not ok:
                # A dead worker's cache is gone; a restarted one starts cold and without adapters.
                w.predicted.clear()
                w.adapters.clear()
        w.healthy = ok
        self.metrics.worker_healthy.labels(w.name).set(1 if ok else 0)

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
            assert w.events is not None
            w.events.apply(events)
            counter.inc(len(events))

    # -- routing key -----------------------------------------------------------------------------------------
    async def routing_key(self, body: dict[str, Any], chat: bool, adapter: AdapterInfo | None) -> RoutingKey:
        """The block hashes the chosen worker will cache, rendered by the engine's own pipeline
        (``harness.mm.request``); kv_text has no resolver, so images stay out of its key."""
        rendered = await render_request(
            body, chat=chat, family=self.family, resolver=self.images, image_limit=self.cfg.mm.image_limit
        )
        ctx = rendered.key_context(
            adapter.name if adapter else None,
            str(adapter.path) if adapter else None,  # exactly what the worker is told to load
        )
        prompt = rendered.prompt
        hashes = block_hashes(prompt.token_ids, self.cfg.block_size, prompt.mm_items, ctx)
        return RoutingKey(hashes, prompt.num_tokens)

    # -- choosing --------------------------------------------------------------------------------------------
    def candidates(self, exclude: set[int], adapter: AdapterInfo | None) -> list[WorkerState]:
        healthy = [w for w in self.workers if w.healthy and w.index not in exclude]
        if adapter is not None:
            holders = [w for w in healthy if adapter.name in w.adapters]
            if any(w.running < self.cfg.lora_spill_running for w in holders):
                return [w for w in holders if w.running < self.cfg.lora_spill_running]
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
        )
        return self.workers[pick.index], overlaps[pick.index]

    def record(self, rid: str, w: WorkerState, overlap: int, key: RoutingKey | None) -> None:
        total = len(key.hashes) if key else 0
        log.info("%s", format_routing(rid, w.name, overlap, total, self.cfg.policy))
        self.metrics.child(self.metrics.decisions, w.name, self.cfg.policy).inc()
        if key is not None:
            self.metrics.child(self.metrics.overlap_ratio, self.cfg.policy).observe(overlap / total if total else 0.0)
            self.metrics.count_prediction(key.prompt_tokens, min(overlap * self.cfg.block_size, key.prompt_tokens))
            w.predicted.insert(key.hashes)

    # -- forwarding ------------------------------------------------------------------------------------------
    async def forward(
        self,
        request: web.Request,
        w: WorkerState,
        path: str,
        data: bytes,
        rid: str,
        stream: bool,
        prefill_tokens: int,
    ) -> web.StreamResponse:
        """Send ``data`` to ``w``; raise RetryableError if nothing reached the client and another try may work."""
        assert self.session is not None
        headers = {"Content-Type": "application/json", REQUEST_ID_HEADER: rid}
        auth = request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout_s, sock_connect=self.cfg.connect_timeout_s)
        w.running += 1
        w.active_prefill_tokens += prefill_tokens
        self.metrics.child(self.metrics.worker_running, w.name).set(w.running)
        prefill_pending = True
        out: web.StreamResponse | None = None
        try:
            async with self.session.post(f"{w.url}{path}", data=data, headers=headers, timeout=timeout) as resp:
                reply_headers = CIMultiDict((k, v) for k, v in resp.headers.items() if k.lower() not in _HOP_HEADERS)
                reply_headers[REQUEST_ID_HEADER] = rid
                reply_headers.setdefault(SERVED_BY_HEADER, w.name)
                if stream and resp.status == 200:
                    out = web.StreamResponse(status=200, headers=reply_headers)
                    await out.prepare(request)
                    async for chunk in resp.content.iter_any():
                        if prefill_pending:
                            w.active_prefill_tokens -= prefill_tokens
                            prefill_pending = False
                        try:
                            await out.write(chunk)
                        except ConnectionResetError:
                            # The client left; the worker is fine. Dropping the upstream connection (leaving this
                            # block) makes the worker abort the request.
                            log.info("request_id=%s client disconnected mid-stream", rid)
                            return out
                    await out.write_eof()
                    return out
                body = await resp.read()
                if resp.status >= 500:
                    raise ApiError(
                        502,
                        f"worker {w.name} ({w.url}) returned HTTP {resp.status}: {_error_message(body)}",
                        None,
                        "BadGatewayError",
                    )
                return web.Response(body=body, status=resp.status, headers=reply_headers)
        except aiohttp.SocketTimeoutError:
            raise ApiError(
                504, f"worker {w.name} ({w.url}) stopped answering mid-request", None, "GatewayTimeoutError"
            ) from None
        except (
            aiohttp.ClientConnectionError,  # refused, reset, disconnected: the worker went away
            aiohttp.ClientPayloadError,  # it died while sending the body
        ) as exc:
            if out is not None:  # bytes already reached the client: nothing can be retried
                return await self._end_broken_stream(out, w, rid, exc)
            raise RetryableError(f"{type(exc).__name__}: {exc}") from None
        except TimeoutError:
            raise ApiError(
                504,
                f"worker {w.name} ({w.url}) did not answer within {self.cfg.request_timeout_s}s",
                None,
                "GatewayTimeoutError",
            ) from None
        finally:
            w.running -= 1
            if prefill_pending:
                w.active_prefill_tokens -= prefill_tokens
            self.metrics.child(self.metrics.worker_running, w.name).set(w.running)

    async def _end_broken_stream(
        self, out: web.StreamResponse, w: WorkerState, rid: str, exc: Exception
    ) -> web.StreamResponse:
        """The worker died mid-stream: tell the client in-band (vLLM's streaming error shape), take the worker
        out, and close the stream without ``[DONE]`` so no client mistakes it for a complete answer."""
        log.warning("request_id=%s worker %s failed mid-stream: %s", rid, w.name, exc)
        self._set_health(w, False, f"failed mid-stream: {type(exc).__name__}")
        error = ApiError(
            502, f"worker {w.name} ({w.url}) failed mid-stream: {type(exc).__name__}", None, "BadGatewayError"
        )
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await out.write(sse_event(error_body(error)))
            await out.write_eof()
        return out

    def inline_assets(self, body: dict[str, Any]) -> bool:
        """Replace mmfile:// references with data URLs (for workers that cannot read the asset dir)."""
        if self.assets is None:
            return False
        changed = False
        for msg in body.get("messages") or []:
            content = msg.get("content") if isinstance(msg, dict) else None
            for part in content if isinstance(content, list) else []:
                image_url = part.get("image_url") if isinstance(part, dict) else None
                url = image_url.get("url") if isinstance(image_url, dict) else None
                if isinstance(url, str) and url.startswith(ASSET_SCHEME):
                    data = self.assets.read(url, self.cfg.mm.max_image_bytes)
                    image_url["url"] = "data:image/*;base64," + base64.b64encode(data).decode()
                    changed = True
        return changed

    async def handle_generate(self, request: web.Request, chat: bool) -> web.StreamResponse:
        t0 = time.perf_counter()
        rid = request["rid"]
        data = await request.read()
        body = parse_json_object(data)
        adapter = self.adapters.resolve(body.get("model"))
        key = None
        if self.router.uses_kv:
            key = await self.routing_key(body, chat, adapter)
        if self.cfg.inline_assets and chat and self.inline_assets(body):
            data = orjson.dumps(body)
        stream = bool(body.get("stream", False))
        path = request.path
        tried: set[int] = set()
        adapter_retried = False
        self.metrics.added_latency.observe(time.perf_counter() - t0)
        request["stats"]["prompt_tokens"] = key.prompt_tokens if key else "-"
        while True:
            pool = self.candidates(tried, adapter)
            if not pool:
                names = ", ".join(f"{w.name}({'up' if w.healthy else 'down'})" for w in self.workers)
                raise ApiError(
                    503, f"no healthy worker can take the request; workers: {names}", None, "ServiceUnavailableError"
                )
            w, overlap = self.choose(pool, key)
            self.record(rid, w, overlap, key)
            request["stats"]["worker"] = w.name
            prefill = max((key.prompt_tokens - overlap * self.cfg.block_size) if key else 0, 0)
            try:
                if adapter is not None:
                    await self.adapters.ensure(w, adapter, rid)
                resp = await self.forward(request, w, path, data, rid, stream, prefill)
            except RetryableError as exc:
                tried.add(w.index)
                self._set_health(w, False, exc.reason)
                self.metrics.retries.labels("connect").inc()
                if len(tried) >= self.cfg.max_attempts:
                    raise ApiError(
                        502,
                        f"worker {w.name} ({w.url}) failed: {exc.reason}; gave up after {len(tried)} attempts",
                        None,
                        "BadGatewayError",
                    ) from None
                log.warning("request_id=%s worker %s failed (%s); retrying elsewhere", rid, w.name, exc.reason)
                continue
            if (
                adapter is not None
                and resp.status == 404
                and not adapter_retried
                and isinstance(resp, web.Response)
                and b"does not exist" in (resp.body or b"")
            ):
                # The worker lost the adapter (restart, eviction): register it again and retry once.
                log.warning(
                    "[LORA] request_id=%s worker %s does not know adapter %s; re-registering", rid, w.name, adapter.name
                )
                w.adapters.pop(adapter.name, None)
                adapter_retried = True
                self.metrics.retries.labels("adapter_404").inc()
                continue
            return resp


def _error_message(body: bytes) -> str:
    try:
        return str(orjson.loads(body)["error"]["message"])[:300]
    except Exception:
        return body[:300].decode("utf-8", errors="replace")
