"""What the proxy knows about each worker: health, load, predicted cache contents, loaded adapters.

Health is two judgements kept apart, because they call for different actions:

* **Down** (health checks): only a *pattern* of failed ``/health`` probes (``down_after`` in a row) says the
  worker is gone, and only then are its predicted index and adapter map wiped (a restarted worker is cold and
  holds no adapters). One slow answer to a probe changes nothing.
* **Breaker** (requests): ``breaker_failures`` failed requests in a row (5xx, timeouts), or one connection
  failure (refused, reset: the worker is unreachable right now), take the worker out of rotation for at least
  ``breaker_cooldown_s``; the first passing probe after that lets it back in. Its index and adapters are kept:
  a worker answering 500s still holds its cache.

Both are pure state machines over an injected clock, so the policy is unit-testable.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from harness.proxy.kv_index import EventIndex, PredictedIndex
from harness.server.kv_events import AllBlocksCleared, BlockRemoved, KVEvent

FailureKind = Literal["unreachable", "worker_error", "timeout"]
#: What a health observation changed: became up/down, breaker opened/closed, or nothing.
Transition = Literal["up", "down", "opened", "reinstated"] | None


class RetryableError(Exception):
    """The worker failed before any byte reached the client: another worker may take the request."""

    def __init__(self, reason: str, kind: FailureKind = "unreachable") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


@dataclass(frozen=True)
class HealthPolicy:
    #: Consecutive failed probes before a worker is declared down (and its state wiped).
    down_after: int = 3
    #: Consecutive failed requests that open the breaker.
    breaker_failures: int = 3
    #: Least time out of rotation once the breaker opened.
    breaker_cooldown_s: float = 5.0


@dataclass
class Health:
    """One worker's health: ``in_rotation`` is what routing reads."""

    policy: HealthPolicy = field(default_factory=HealthPolicy)
    #: Passes health checks (False until the first probe passes).
    up: bool = False
    probe_failures: int = 0
    request_failures: int = 0
    #: The breaker is open (worker out of rotation) while set; a passing probe after this time closes it.
    open_until: float | None = None

    @property
    def in_rotation(self) -> bool:
        return self.up and self.open_until is None

    def probe(self, ok: bool, now: float) -> Transition:
        if not ok:
            self.probe_failures += 1
            if self.up and self.probe_failures >= self.policy.down_after:
                self.up = False
                return "down"
            return None
        self.probe_failures = 0
        if not self.up:
            self.up = True
            self.open_until = None
            self.request_failures = 0
            return "up"
        if self.open_until is not None and now >= self.open_until:
            self.open_until = None
            self.request_failures = 0
            return "reinstated"
        return None

    def request_ok(self) -> None:
        self.request_failures = 0

    def request_failed(self, kind: FailureKind, now: float) -> Transition:
        self.request_failures += 1
        if self.open_until is not None:
            return None
        if kind == "unreachable" or self.request_failures >= self.policy.breaker_failures:
            self.open_until = now + self.policy.breaker_cooldown_s
            return "opened"
        return None

    @property
    def state(self) -> Literal["up", "out", "down"]:
        return "down" if not self.up else ("up" if self.open_until is None else "out")


@dataclass(eq=False)
class WorkerState:
    index: int
    url: str
    predicted: PredictedIndex
    events: EventIndex | None = None
    #: Learned from the worker's X-Served-By header; host:port until then (real vLLM sends none).
    name: str = ""
    health: Health = field(default_factory=Health)
    running: int = 0
    active_prefill_tokens: int = 0
    #: Adapters loaded on this worker: user-facing name -> the name the worker knows it by (content-addressed,
    #: ``AdapterInfo.served_name``), least recently used first.
    adapters: OrderedDict[str, str] = field(default_factory=OrderedDict)
    adapter_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = urlsplit(self.url).netloc or self.url

    @property
    def healthy(self) -> bool:
        return self.health.in_rotation

    @property
    def cached_blocks(self) -> int:
        return len(self.events.blocks) if self.events is not None else len(self.predicted)

    def overlap(self, hashes: list[int]) -> int:
        n = self.predicted.match(hashes)
        if self.events is not None:
            n = max(n, self.events.match(hashes))
        return n

    def apply_events(self, events: Sequence[KVEvent]) -> None:
        """Mirror the worker's KV events; what it evicts or clears leaves the predictions too (only reservations
        of requests in flight stay)."""
        assert self.events is not None
        self.events.apply(events)
        for event in events:
            if isinstance(event, BlockRemoved):
                self.predicted.discard(event.block_hashes)
            elif isinstance(event, AllBlocksCleared):
                self.predicted.clear()

    def forget(self) -> None:
        """The worker is gone: a restarted one starts cold and without adapters."""
        self.predicted.clear()
        self.adapters.clear()

    def lease(self, prefill_tokens: int) -> Lease:
        return Lease(self, prefill_tokens)


class Lease:
    """One request in flight on a worker: counted as running, its prefill as pending until the first byte."""

    def __init__(self, worker: WorkerState, prefill_tokens: int) -> None:
        self.worker = worker
        self.prefill_tokens = prefill_tokens
        self._prefill_pending = True
        self._open = True
        worker.running += 1
        worker.active_prefill_tokens += prefill_tokens

    def prefill_done(self) -> None:
        if self._prefill_pending:
            self._prefill_pending = False
            self.worker.active_prefill_tokens -= self.prefill_tokens

    def end(self) -> None:
        if self._open:
            self._open = False
            self.prefill_done()
            self.worker.running -= 1
