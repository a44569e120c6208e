"""A closed-loop HTTP load generator: N concurrent clients, each sending its next request when the last one
returns, for a fixed duration. Used by benchmarks to measure a server's capacity (req/s) and latency.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        return len(self.latencies_s)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        if len(self.latencies_s) == 1:
            return self.latencies_s[0]
        return statistics.quantiles(self.latencies_s, n=1000, method="inclusive")[int(q * 10) - 1]


async def closed_loop(
    url: str,
    make_body: Callable[[int], dict[str, Any]],
    *,
    concurrency: int,
    duration_s: float,
    max_requests: int | None = None,
    headers: dict[str, str] | None = None,
) -> LoadResult:
    """Send ``make_body(i)`` to ``url`` from ``concurrency`` workers until ``duration_s`` or ``max_requests``."""
    result = LoadResult()
    counter = 0
    deadline = time.perf_counter() + duration_s
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    hdrs = {"Content-Type": "application/json", **(headers or {})}

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal counter
        while time.perf_counter() < deadline and (max_requests is None or counter < max_requests):
            i = counter
            counter += 1
            data = orjson.dumps(make_body(i))
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=data, headers=hdrs) as resp:
                    await resp.read()
                    result.statuses[resp.status] = result.statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        result.latencies_s.append(time.perf_counter() - t0)
                    else:
                        result.errors += 1
            except aiohttp.ClientError:
                result.errors += 1

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - start
    return result
