"""What the proxy knows about each worker: health, load, predicted cache contents, loaded adapters."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from harness.proxy.kv_index import EventIndex, PredictedIndex


class RetryableError(Exception):
    """The worker failed before any byte reached the client: another worker may take the request."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(eq=False)
class WorkerState:
    index: int
    url: str
    predicted: PredictedIndex
    events: EventIndex | None = None
    #: Learned from the worker's X-Served-By header; host:port until then (real vLLM sends none).
    name: str = ""
    healthy: bool = False
    running: int = 0
    active_prefill_tokens: int = 0
    #: Adapters loaded on this worker, name -> content digest, least recently used first.
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)
    adapter_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = urlsplit(self.url).netloc or self.url

    @property
    def cached_blocks(self) -> int:
        return len(self.events.blocks) if self.events is not None else len(self.predicted)

    def overlap(self, hashes: list[int]) -> int:
        n = self.predicted.match(hashes)
        if self.events is not None:
            n = max(n, self.events.match(hashes))
        return n
