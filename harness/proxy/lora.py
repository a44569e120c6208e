"""Adapters on workers: resolve a request's adapter, load it where it is routed, keep an LRU per worker.

Loading goes through vLLM's runtime endpoint (``/v1/load_lora_adapter``), treating "already loaded" as success,
so it is idempotent; a worker that is full unloads its least recently used adapter first. The cold path (resolve,
validate, load) is timed and logged per adapter and worker.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp

from harness.contract import format_lora_cold_load
from harness.errors import ApiError
from harness.proxy.adapters import AdapterCatalog, AdapterInfo
from harness.proxy.metrics import ProxyMetrics
from harness.proxy.workers import RetryableError, WorkerState

log = logging.getLogger("harness.proxy")


class AdapterManager:
    def __init__(self, catalog: AdapterCatalog, base_model: str, max_per_worker: int, metrics: ProxyMetrics) -> None:
        self.catalog = catalog
        self.base_model = base_model
        self.max_per_worker = max_per_worker
        self.metrics = metrics
        self.session: aiohttp.ClientSession | None = None

    def resolve(self, model: Any) -> AdapterInfo | None:
        """The adapter a request's ``model`` names (None for the base model), validated; 4xx otherwise."""
        if model is None or model == self.base_model:
            return None
        if not isinstance(model, str):
            raise ApiError(400, "model must be a string", "model")
        return self.catalog.resolve(model)  # AdapterError: 404 NotFoundError or 400 AdapterValidationError

    async def ensure(self, w: WorkerState, info: AdapterInfo, rid: str) -> None:
        """Load ``info`` on ``w`` unless it is there with the same digest; evict the LRU adapter if full."""
        if w.adapters.get(info.name) == info.digest:
            w.adapters.move_to_end(info.name)
            return
        async with w.adapter_lock:
            if w.adapters.get(info.name) == info.digest:
                return
            if info.name in w.adapters:  # same name, new content: replace it
                await self._unload(w, info.name)
            while len(w.adapters) >= self.max_per_worker:
                victim = next(iter(w.adapters))
                await self._unload(w, victim)
            t0 = time.perf_counter()
            assert self.session is not None
            payload = {"lora_name": info.name, "lora_path": str(info.path)}
            try:
                async with self.session.post(f"{w.url}/v1/load_lora_adapter", json=payload) as resp:
                    text = await resp.text()
            except aiohttp.ClientError as exc:
                raise RetryableError(f"adapter load failed: {exc}") from None
            if resp.status != 200 and not (resp.status == 400 and "already been loaded" in text):
                raise ApiError(
                    502,
                    f"worker {w.name} refused to load adapter {info.identity}: HTTP {resp.status}: {text[:300]}",
                    "model",
                    "BadGatewayError",
                )
            load_ms = (time.perf_counter() - t0) * 1e3
            w.adapters[info.name] = info.digest
            self.metrics.lora_cold.labels("resolve").observe(info.resolve_ms / 1e3)
            self.metrics.lora_cold.labels("validate").observe(info.validate_ms / 1e3)
            self.metrics.lora_cold.labels("load").observe(load_ms / 1e3)
            log.info(
                "%s",
                format_lora_cold_load(
                    rid, info.name, info.identity, w.name, info.resolve_ms, info.validate_ms, load_ms
                ),
            )

    async def _unload(self, w: WorkerState, name: str) -> None:
        assert self.session is not None
        try:
            async with self.session.post(f"{w.url}/v1/unload_lora_adapter", json={"lora_name": name}) as resp:
                await resp.read()
            log.info("[LORA] evicted adapter=%s worker=%s status=%d", name, w.name, resp.status)
        except aiohttp.ClientError as exc:
            log.warning("[LORA] unloading %s from %s failed: %s", name, w.name, exc)
        w.adapters.pop(name, None)
