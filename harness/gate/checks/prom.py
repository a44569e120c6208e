"""Prometheus text-format scraping and the deltas the gates read (prefix-cache hit rate per worker)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from harness.gate.checks import CheckResult

Samples = dict[str, float]  # metric sample name -> value summed over label sets


def info_labels(text: str, family_name: str) -> dict[str, str] | None:
    """The labels of an info-style gauge (``vllm:cache_config_info{block_size="16",...} 1``), or None."""
    for family in text_string_to_metric_families(text):
        if family.name in (family_name, family_name.removesuffix("_info")):
            for sample in family.samples:
                return dict(sample.labels)
    return None


def block_size_from_metrics(text: str) -> int | None:
    """A worker's KV block size from ``vllm:cache_config_info`` (``vllm/v1/metrics/loggers.py`` publishes the
    cache config as labels of that gauge)."""
    labels = info_labels(text, "vllm:cache_config_info")
    value = (labels or {}).get("block_size")
    return int(value) if value and value.isdigit() else None


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


METRICS_HITS = "/metrics prefix-cache hits match responses"


def metrics_agree(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]], reported_cached: int
) -> tuple[CheckResult, CacheDelta]:
    """Prefix-cache hits counted by the workers over the gate equal the cached tokens responses reported."""
    hits = queries = 0.0
    for name, samples in after.items():
        d = cache_delta(before.get(name, {}), samples)
        hits, queries = hits + d.hits, queries + d.queries
    total = CacheDelta(queries, hits)
    if not queries:  # n/a under the check's own name, so the evidence rules can name its reason
        return CheckResult(
            METRICS_HITS, None, "workers export vllm:prefix_cache_*", "no data: no vllm:prefix_cache_* delta", "metrics"
        ), total
    return CheckResult(
        METRICS_HITS,
        hits == reported_cached,
        f"vllm:prefix_cache_hits delta == {reported_cached} (sum of cached_tokens reported)",
        f"hits delta={hits:.0f}, queries delta={queries:.0f}, hit rate={total.hit_rate:.2f}",
        "metrics",
        source="/metrics",
    ), total


def queries_agree(
    before: Mapping[str, Mapping[str, float]], after: Mapping[str, Mapping[str, float]], reported_prompt: int
) -> CheckResult:
    """The workers looked up exactly the prompt tokens the responses reported (``vllm:prefix_cache_queries``
    counts prompt tokens per scheduled request), so the hits check above compares like with like."""
    name = "/metrics prefix-cache queries match prompt tokens"
    queries = sum(cache_delta(before.get(n, {}), s).queries for n, s in after.items())
    if not queries:
        return CheckResult(name, None, "workers export vllm:prefix_cache_queries", "no data", "metrics")
    return CheckResult(
        name,
        queries == reported_prompt,
        f"vllm:prefix_cache_queries delta == {reported_prompt} (sum of prompt_tokens reported)",
        f"queries delta={queries:.0f}",
        "metrics",
        source="/metrics",
    )
