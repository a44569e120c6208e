"""Adapters on workers: resolve a request's adapter, load it where it is routed, keep an LRU per worker.

Workers load an adapter under its content-addressed served name (``AdapterInfo.served_name``), so a replaced
adapter never shares cached blocks with its predecessor on engines that key blocks by name. Loading goes
through vLLM's runtime endpoint (``/v1/load_lora_adapter``) under a timeout, while the worker's adapter lock is
held. vLLM refuses a name it already has with HTTP 400 (``_check_load_lora_adapter_request`` in
``vllm/entrypoints/openai/models/serving.py``); rather than read its message, the proxy then asks the worker's
``/v1/models``, which lists every loaded adapter by name: listed is loaded. A worker that is full unloads its
least recently used adapter first. The cold path (resolve, validate, load) is timed and logged per adapter and
worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from harness.contract import format_lora_cold_load
from harness.errors import ApiError
from harness.proxy.adapters import AdapterCatalog, AdapterInfo
from harness.proxy.metrics import ProxyMetrics
from harness.proxy.replies import error_message
from harness.proxy.transport import ConnectError, ReadError, Timeouts, Transport, TransportError
from harness.proxy.workers import RetryableError, WorkerState

log = logging.getLogger("harness.proxy")

_JSON = {"Content-Type": "application/json"}


class AdapterManager:
    def __init__(
        self,
        catalog: AdapterCatalog,
        base_model: str,
        max_per_worker: int,
        metrics: ProxyMetrics,
        transport: Transport,
        load_timeout_s: float = 60.0,
    ) -> None:
        self.catalog = catalog
        self.base_model = base_model
        self.max_per_worker = max_per_worker
        self.metrics = metrics
        self.transport = transport
        self.timeout = Timeouts(total=load_timeout_s)

    def resolve(self, model: Any) -> AdapterInfo | None:
        """The adapter a request's ``model`` names (None for the base model), validated; 4xx otherwise."""
        if model is None or model == self.base_model:
            return None
        if not isinstance(model, str):
            raise ApiError(400, "model must be a string", "model")
        return self.catalog.resolve(model)  # AdapterError: 404 NotFoundError or 400 AdapterValidationError

    @staticmethod
    def holds(w: WorkerState, info: AdapterInfo) -> bool:
        return w.adapters.get(info.name) == info.served_name

    async def ensure(self, w: WorkerState, info: AdapterInfo, rid: str) -> None:
        """Load ``info`` on ``w`` unless it is there with the same content; evict the LRU adapter if full."""
        if self.holds(w, info):
            w.adapters.move_to_end(info.name)
            return
        async with w.adapter_lock:
            if self.holds(w, info):
                return
            stale = w.adapters.get(info.name)
            if stale is not None:  # same name, new content: its old version goes
                await self._unload(w, info.name, stale)
            while len(w.adapters) >= self.max_per_worker:
                victim, served = next(iter(w.adapters.items()))
                await self._unload(w, victim, served)
            load_ms = await self._load(w, info)
            w.adapters[info.name] = info.served_name
        self.metrics.lora_cold.labels("resolve").observe(info.resolve_ms / 1e3)
        self.metrics.lora_cold.labels("validate").observe(info.validate_ms / 1e3)
        self.metrics.lora_cold.labels("load").observe(load_ms / 1e3)
        log.info(
            "%s",
            format_lora_cold_load(rid, info.name, info.identity, w.name, info.resolve_ms, info.validate_ms, load_ms),
        )

    def forget(self, w: WorkerState, info: AdapterInfo) -> None:
        """The worker answered that it does not know the adapter: the next request loads it again."""
        if self.holds(w, info):
            del w.adapters[info.name]

    async def _load(self, w: WorkerState, info: AdapterInfo) -> float:
        t0 = time.perf_counter()
        payload = orjson.dumps({"lora_name": info.served_name, "lora_path": str(info.path)})
        try:
            async with self.transport.request(
                "POST", f"{w.url}/v1/load_lora_adapter", body=payload, headers=_JSON, timeout=self.timeout
            ) as resp:
                status, body = resp.status, await resp.read()
        except (ConnectError, ReadError) as exc:
            raise RetryableError(f"adapter load failed: {exc}", "unreachable") from None
        except TransportError as exc:  # ReadTimeout, Timeout: the lock is not held past the deadline
            raise RetryableError(
                f"adapter load did not finish within {self.timeout.total}s ({type(exc).__name__})", "timeout"
            ) from None
        if status >= 500:
            raise RetryableError(f"adapter load failed: HTTP {status}: {error_message(body)}", "worker_error")
        if status != 200 and not (status == 400 and await self._lists(w, info.served_name)):
            raise ApiError(
                502,
                f"worker {w.name} refused to load adapter {info.identity}: HTTP {status}: {error_message(body)}",
                "model",
                "BadGatewayError",
            )
        return (time.perf_counter() - t0) * 1e3

    async def _lists(self, w: WorkerState, served: str) -> bool:
        """Whether the worker's ``/v1/models`` lists ``served`` (vLLM lists every loaded adapter's card)."""
        try:
            async with self.transport.request("GET", f"{w.url}/v1/models", timeout=self.timeout) as resp:
                status, body = resp.status, await resp.read()
        except TransportError:
            return False
        if status != 200:
            return False
        try:
            cards = orjson.loads(body).get("data")
        except (orjson.JSONDecodeError, AttributeError):
            return False
        return isinstance(cards, list) and any(isinstance(c, dict) and c.get("id") == served for c in cards)

    async def _unload(self, w: WorkerState, name: str, served: str) -> None:
        payload = orjson.dumps({"lora_name": served})
        try:
            async with self.transport.request(
                "POST", f"{w.url}/v1/unload_lora_adapter", body=payload, headers=_JSON, timeout=self.timeout
            ) as resp:
                await resp.read()
            log.info("[LORA] evicted adapter=%s served_as=%s worker=%s status=%d", name, served, w.name, resp.status)
        except TransportError as exc:
            log.warning("[LORA] unloading %s from %s failed: %s", served, w.name, exc)
        w.adapters.pop(name, None)
