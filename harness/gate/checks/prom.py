"""Prometheus text-format scraping and the deltas the gates read (prefix-cache hit rate per worker)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from harness.gate.checks import CheckResult

Samples = dict[str, float]  # metric sample name -> value summed over label sets


def parse_metrics(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


@dataclass(frozen=True)
class CacheDelta:
    queries: float
    hits: float

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def cache_delta(before: Mapping[str, float], after: Mapping[str, float]) -> CacheDelta:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    return CacheDelta(delta("vllm:prefix_cache_queries_total"), delta("vllm:prefix_cache_hits_total"))


def metrics_agree(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]], reported_cached: int
) -> tuple[CheckResult, CacheDelta]:
    """Prefix-cache hits counted by the workers over the gate equal the cached tokens responses reported."""
    hits = queries = 0.0
    for name, samples in after.items():
        d = cache_delta(before.get(name, {}), samples)
        hits, queries = hits + d.hits, queries + d.queries
    total = CacheDelta(queries, hits)
    if not queries:
        return CheckResult(
            "/metrics prefix-cache deltas", None, "workers export vllm:prefix_cache_*", "no data", "metrics"
        ), total
    return CheckResult(
        "/metrics prefix-cache hits match responses",
        hits == reported_cached,
        f"vllm:prefix_cache_hits delta == {reported_cached} (sum of cached_tokens reported)",
        f"hits delta={hits:.0f}, queries delta={queries:.0f}, hit rate={total.hit_rate:.2f}",
        "metrics",
    ), total
