"""vLLM's Prometheus metrics (``vllm/v1/metrics/loggers.py`` names and labels), fed by the engine's hooks."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

from harness.sim.engine import Engine, EngineHooks, Request

disable_created_metrics()

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    640.0,
    2560.0,
)
ITL_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
E2E_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
    1920.0,
    7680.0,
)
FINISH_REASONS = ("stop", "length", "abort")


class EngineMetrics(EngineHooks):
    """One registry per worker; gauges are read from the engine at scrape time, so steps pay nothing."""

    def __init__(self, model_name: str, engine_index: str = "0") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: Run after every engine step (the KV event publisher flushes its batch here).
        self.step_end_callbacks: list[Callable[[], None]] = []
        labels = ("model_name", "engine")
        self._values = (model_name, engine_index)
        r = self.registry

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, labels, registry=r)

        self.prefix_queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in tokens.")
        self.prefix_hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in tokens.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemptions.")
        self.success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            (*labels, "finished_reason"),
            registry=r,
        )
        self.running = Gauge("vllm:num_requests_running", "Requests in model execution batches.", labels, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to be processed.", labels, registry=r)
        self.kv_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", labels, registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token.",
            labels,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency.",
            labels,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency.",
            labels,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        # Bind label children once: .labels() per event would dominate the hot path.
        v = self._values
        self._queries, self._hits = self.prefix_queries.labels(*v), self.prefix_hits.labels(*v)
        self._prompt, self._gen = self.prompt_tokens.labels(*v), self.generation_tokens.labels(*v)
        self._preempt = self.preemptions.labels(*v)
        self._success = {r: self.success.labels(*v, r) for r in FINISH_REASONS}
        self._ttft, self._itl, self._e2e = self.ttft.labels(*v), self.itl.labels(*v), self.e2e.labels(*v)

    def bind(self, engine: Engine) -> None:
        v = self._values
        self.running.labels(*v).set_function(lambda: engine.num_running)
        self.waiting.labels(*v).set_function(lambda: engine.num_waiting)
        self.kv_usage.labels(*v).set_function(lambda: engine.pool.usage)

    # -- EngineHooks -----------------------------------------------------------------------------------
    def on_scheduled(self, req: Request) -> None:
        self._queries.inc(req.prompt_len)
        self._hits.inc(req.num_cached_tokens)

    def on_token(self, req: Request, now: float, n: int, gap: float | None) -> None:
        self._gen.inc(n)
        if gap is None:
            self._ttft.observe(now - req.arrival)
            n -= 1
            gap = 0.0
        for _ in range(n):
            self._itl.observe(gap)
            gap = 0.0  # tokens delivered in one step share its arrival time

    def on_finished(self, req: Request, now: float) -> None:
        self._prompt.inc(req.prompt_len)
        self._success[req.finish_reason or "abort"].inc()
        self._e2e.observe(now - req.arrival)

    def on_preempted(self, req: Request) -> None:
        self._preempt.inc()

    def on_step_end(self) -> None:
        for callback in self.step_end_callbacks:
            callback()
