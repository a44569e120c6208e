"""vLLM's Prometheus metrics (``vllm/v1/metrics/loggers.py`` names, labels and buckets), fed by the engine's hooks.

Counted as vLLM counts them (``vllm/v1/metrics/stats.py``): ``vllm:prompt_tokens`` grows by a request's whole
prompt when its prefill ends (the step that samples its first token), not when it finishes; the per-request
histograms (prompt and generation tokens, queue / prefill / decode / inference time) are observed when it
finishes; ``vllm:iteration_tokens_total`` once per engine step that produced tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping

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
#: ``histogram_iteration_tokens`` buckets.
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
#: ``request_latency_buckets``: queue, prefill, decode and inference time share the e2e buckets.
REQUEST_TIME_BUCKETS = E2E_BUCKETS
#: Items the simulated multimodal processor cache remembers (vLLM sizes it in GiB: ``--mm-processor-cache-gb``).
MM_CACHE_ITEMS = 4096


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to ``max_value`` (``build_1_2_5_buckets`` in ``vllm/v1/metrics/loggers.py``)."""
    out: list[int] = []
    exponent = 0
    while True:
        for m in (1, 2, 5):
            value = m * 10**exponent
            if value > max_value:
                return tuple(out)
            out.append(value)
        exponent += 1


class EngineMetrics(EngineHooks):
    """One registry per worker; gauges are read from the engine at scrape time, so steps pay nothing."""

    def __init__(
        self, model_name: str, engine_index: str = "0", *, max_model_len: int = 8192, max_loras: int | None = None
    ) -> None:
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

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=r)

        token_buckets = build_1_2_5_buckets(max_model_len)
        self.request_prompt_tokens = histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", token_buckets
        )
        self.request_generation_tokens = histogram(
            "vllm:request_generation_tokens", "Number of generation tokens processed.", token_buckets
        )
        self.iteration_tokens = histogram(
            "vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", ITERATION_TOKEN_BUCKETS
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.inference_time = histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_TIME_BUCKETS,
        )
        self.mm_cache_queries = counter(
            "vllm:mm_cache_queries", "Multi-modal cache queries, in terms of number of queried items."
        )
        self.mm_cache_hits = counter(
            "vllm:mm_cache_hits", "Multi-modal cache hits, in terms of number of cached items."
        )
        #: ``vllm:lora_requests_info`` exists only when LoRA is enabled, as in vLLM.
        self.max_loras = max_loras
        self.lora_info = (
            Gauge(
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                ("max_lora", "waiting_lora_adapters", "running_lora_adapters"),
                registry=r,
            )
            if max_loras is not None
            else None
        )
        self._mm_seen: OrderedDict[str, None] = OrderedDict()
        self._engine: Engine | None = None
        self._step_tokens = 0
        # Bind label children once: .labels() per event would dominate the hot path.
        v = self._values
        self._queries, self._hits = self.prefix_queries.labels(*v), self.prefix_hits.labels(*v)
        self._prompt, self._gen = self.prompt_tokens.labels(*v), self.generation_tokens.labels(*v)
        self._preempt = self.preemptions.labels(*v)
        self._success = {r: self.success.labels(*v, r) for r in FINISH_REASONS}
        self._ttft, self._itl, self._e2e = self.ttft.labels(*v), self.itl.labels(*v), self.e2e.labels(*v)
        self._req_prompt = self.request_prompt_tokens.labels(*v)
        self._req_gen = self.request_generation_tokens.labels(*v)
        self._iter_tokens = self.iteration_tokens.labels(*v)
        self._queue, self._prefill = self.queue_time.labels(*v), self.prefill_time.labels(*v)
        self._decode, self._inference = self.decode_time.labels(*v), self.inference_time.labels(*v)
        self._mm_queries, self._mm_hits = self.mm_cache_queries.labels(*v), self.mm_cache_hits.labels(*v)

    def log_cache_config(self, info: Mapping[str, object]) -> None:
        """``vllm:cache_config_info``: a gauge at 1 whose labels are the CacheConfig's fields as strings
        (``log_metrics_info`` in ``vllm/v1/metrics/loggers.py``, ``CacheConfig.metrics_info`` in
        ``vllm/config/cache.py``), plus ``engine``. Routers read the block size from here."""
        labels = {k: str(v) for k, v in info.items()}
        labels["engine"] = self._values[1]
        gauge = Gauge(
            "vllm:cache_config_info", "Information of the LLMEngine CacheConfig", tuple(labels), registry=self.registry
        )
        gauge.labels(**labels).set(1)

    def observe_mm_items(self, hashes: list[str]) -> None:
        """The multimodal processor cache: one query per image item, a hit when its hash was seen recently."""
        if not hashes:
            return
        seen = self._mm_seen
        hits = 0
        for h in hashes:
            if h in seen:
                hits += 1
                seen.move_to_end(h)
            else:
                seen[h] = None
                if len(seen) > MM_CACHE_ITEMS:
                    seen.popitem(last=False)
        self._mm_queries.inc(len(hashes))
        self._mm_hits.inc(hits)

    def bind(self, engine: Engine) -> None:
        self._engine = engine
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
        self._step_tokens += n
        if gap is None:
            # Prefill ends with the first token: vLLM counts the whole prompt now (IterationStats).
            self._prompt.inc(req.prompt_len)
            self._step_tokens += req.prompt_len
            self._ttft.observe(now - req.arrival)
            n -= 1
            gap = 0.0
        for _ in range(n):
            self._itl.observe(gap)
            gap = 0.0  # tokens delivered in one step share its arrival time

    def on_finished(self, req: Request, now: float) -> None:
        self._success[req.finish_reason or "abort"].inc()
        self._e2e.observe(now - req.arrival)
        self._req_prompt.observe(req.prompt_len)
        self._req_gen.observe(len(req.outputs))
        # FinishedRequestStats (vllm/v1/metrics/stats.py): queued = scheduled - arrival, prefill = first token -
        # scheduled, decode = last token - first token, inference = last token - scheduled.
        scheduled = req.scheduled_time
        if scheduled is None:  # aborted while waiting
            self._queue.observe(now - req.arrival)
            return
        first = req.first_token_time if req.first_token_time is not None else now
        last = req.last_token_time if req.last_token_time is not None else now
        self._queue.observe(scheduled - req.arrival)
        self._prefill.observe(first - scheduled)
        self._decode.observe(last - first)
        self._inference.observe(last - scheduled)

    def on_preempted(self, req: Request) -> None:
        self._preempt.inc()

    def on_step_end(self) -> None:
        if self._step_tokens:
            self._iter_tokens.observe(self._step_tokens)
            self._step_tokens = 0
            if self.lora_info is not None and self._engine is not None:
                self._record_lora(self._engine)
        for callback in self.step_end_callbacks:
            callback()

    def _record_lora(self, engine: Engine) -> None:
        """``vllm:lora_requests_info``: the adapters of running and waiting requests, stamped with the time."""
        assert self.lora_info is not None
        running = ",".join(dict.fromkeys(n for r in engine.running if (n := r.key_ctx.lora_name)))
        waiting = ",".join(dict.fromkeys(n for r in engine.waiting if (n := r.key_ctx.lora_name)))
        self.lora_info.labels(str(self.max_loras), waiting, running).set_to_current_time()
