"""The proxy's Prometheus metrics: decisions per worker and policy, overlap, predicted hit rate, health."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()

RATIO_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ProxyMetrics:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}
        self.routed_tokens = 0  # the hit-rate gauge's inputs, kept here rather than read back from the counters
        self.predicted_tokens = 0
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.decisions = Counter(
            "harness_proxy_routing_decisions", "Routing decisions.", ("worker", "policy"), registry=r
        )
        self.overlap_ratio = Histogram(
            "harness_proxy_overlap_ratio",
            "Predicted overlap / total blocks.",
            ("policy",),
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("harness_proxy_prompt_tokens", "Prompt tokens of routed requests.", registry=r)
        self.predicted_cached_tokens = Counter(
            "harness_proxy_predicted_cached_tokens",
            "Prompt tokens predicted to hit the chosen worker's cache.",
            registry=r,
        )
        self.predicted_hit_rate = Gauge(
            "harness_proxy_predicted_hit_rate", "Predicted cached tokens / prompt tokens since start.", registry=r
        )
        self.predicted_hit_rate.set_function(self._hit_rate)
        self.requests = Counter("harness_proxy_requests", "Requests answered, by status.", ("status",), registry=r)
        self.retries = Counter("harness_proxy_retries", "Requests re-sent to another worker.", ("reason",), registry=r)
        self.worker_healthy = Gauge(
            "harness_proxy_worker_healthy", "1 if the worker passes health checks.", ("worker",), registry=r
        )
        self.worker_running = Gauge(
            "harness_proxy_worker_running", "Requests in flight on the worker.", ("worker",), registry=r
        )
        self.lora_cold = Histogram(
            "harness_proxy_lora_cold_path_seconds",
            "Adapter cold path, by phase.",
            ("phase",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.kv_events = Counter("harness_proxy_kv_events", "KV events consumed.", ("worker",), registry=r)
        self.added_latency = Histogram(
            "harness_proxy_overhead_seconds",
            "Time spent in the proxy before forwarding.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )

    def child(self, metric, *labels: str):  # type: ignore[no-untyped-def]
        """``metric.labels(*labels)``, memoized: the per-request path should not re-resolve label sets."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def _hit_rate(self) -> float:
        return self.predicted_tokens / self.routed_tokens if self.routed_tokens else 0.0

    def count_prediction(self, prompt_tokens: int, predicted_cached: int) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.predicted_cached_tokens.inc(predicted_cached)
        self.routed_tokens += prompt_tokens
        self.predicted_tokens += predicted_cached
