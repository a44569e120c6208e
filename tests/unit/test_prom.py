"""Prometheus scraping: samples summed over label sets, and the prefix-cache deltas the gates read."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from harness.gate.checks.prom import CacheDelta, cache_delta, parse_metrics

MODEL = "Qwen/Qwen3-VL-2B-Instruct"

# What a two-engine vLLM /metrics page looks like (trimmed).
VLLM_TEXT = f"""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} 2.0
vllm:num_requests_running{{engine="1",model_name="{MODEL}"}} 1.0
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="{MODEL}"}} 640.0
vllm:prefix_cache_queries_total{{engine="1",model_name="{MODEL}"}} 360.0
# HELP vllm:prefix_cache_queries_created Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_created gauge
vllm:prefix_cache_queries_created{{engine="0",model_name="{MODEL}"}} 1.7e+09
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="{MODEL}"}} 512.0
vllm:prefix_cache_hits_total{{engine="1",model_name="{MODEL}"}} 0.0
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.1",model_name="{MODEL}"}} 3.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="1.0",model_name="{MODEL}"}} 5.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="{MODEL}"}} 6.0
vllm:time_to_first_token_seconds_count{{engine="0",model_name="{MODEL}"}} 6.0
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="{MODEL}"}} 2.5
vllm:time_to_first_token_seconds_bucket{{engine="1",le="0.1",model_name="{MODEL}"}} 1.0
vllm:time_to_first_token_seconds_bucket{{engine="1",le="1.0",model_name="{MODEL}"}} 4.0
vllm:time_to_first_token_seconds_bucket{{engine="1",le="+Inf",model_name="{MODEL}"}} 4.0
vllm:time_to_first_token_seconds_count{{engine="1",model_name="{MODEL}"}} 4.0
vllm:time_to_first_token_seconds_sum{{engine="1",model_name="{MODEL}"}} 1.25
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="{MODEL}"}} 7.0
vllm:request_success_total{{engine="0",finished_reason="length",model_name="{MODEL}"}} 3.0
"""


def test_counters_keep_total_suffix_and_sum_over_label_sets() -> None:
    s = parse_metrics(VLLM_TEXT)
    assert s["vllm:prefix_cache_queries_total"] == 1000.0
    assert s["vllm:prefix_cache_hits_total"] == 512.0
    assert s["vllm:request_success_total"] == 10.0  # summed over finished_reason too
    assert "vllm:prefix_cache_queries" not in s


def test_gauge_summed_over_engines() -> None:
    s = parse_metrics(VLLM_TEXT)
    assert s["vllm:num_requests_running"] == 3.0
    assert s["vllm:prefix_cache_queries_created"] == 1.7e9


def test_histogram_count_and_sum() -> None:
    s = parse_metrics(VLLM_TEXT)
    assert s["vllm:time_to_first_token_seconds_count"] == 10.0
    assert s["vllm:time_to_first_token_seconds_sum"] == pytest.approx(3.75)
    assert s["vllm:time_to_first_token_seconds_bucket"] == 3 + 5 + 6 + 1 + 4 + 4  # every (engine, le) label set
    assert all(isinstance(v, float) for v in s.values())


def test_empty_text() -> None:
    assert parse_metrics("") == {}


def test_registry_exposition_round_trip() -> None:
    """The text prometheus_client itself writes (what the simulated worker serves) parses the same way."""
    reg = CollectorRegistry()
    labels = ["model_name", "engine"]
    queries = Counter("vllm:prefix_cache_queries", "queries", labels, registry=reg)
    hits = Counter("vllm:prefix_cache_hits", "hits", labels, registry=reg)
    running = Gauge("vllm:num_requests_running", "running", labels, registry=reg)
    ttft = Histogram("vllm:time_to_first_token_seconds", "ttft", labels, buckets=(0.1, 1.0), registry=reg)
    for engine, (q, h, r) in {"0": (100, 40, 2), "1": (50, 10, 5)}.items():
        queries.labels(MODEL, engine).inc(q)
        hits.labels(MODEL, engine).inc(h)
        running.labels(MODEL, engine).set(r)
        ttft.labels(MODEL, engine).observe(0.05)
        ttft.labels(MODEL, engine).observe(0.5)
    s = parse_metrics(generate_latest(reg).decode())
    assert s["vllm:prefix_cache_queries_total"] == 150.0
    assert s["vllm:prefix_cache_hits_total"] == 50.0
    assert s["vllm:num_requests_running"] == 7.0
    assert s["vllm:time_to_first_token_seconds_count"] == 4.0
    assert s["vllm:time_to_first_token_seconds_sum"] == pytest.approx(1.1)


def test_cache_delta_between_scrapes() -> None:
    before = parse_metrics(VLLM_TEXT)
    after_text = VLLM_TEXT.replace(
        f'vllm:prefix_cache_queries_total{{engine="1",model_name="{MODEL}"}} 360.0',
        f'vllm:prefix_cache_queries_total{{engine="1",model_name="{MODEL}"}} 720.0',
    ).replace(
        f'vllm:prefix_cache_hits_total{{engine="1",model_name="{MODEL}"}} 0.0',
        f'vllm:prefix_cache_hits_total{{engine="1",model_name="{MODEL}"}} 300.0',
    )
    assert after_text != VLLM_TEXT
    after = parse_metrics(after_text)
    assert after["vllm:prefix_cache_queries_total"] == 1360.0
    d = cache_delta(before, after)
    assert d == CacheDelta(queries=360.0, hits=300.0)
    assert d.hit_rate == pytest.approx(300 / 360)


def test_cache_delta_from_empty_before() -> None:
    d = cache_delta({}, {"vllm:prefix_cache_queries_total": 200.0, "vllm:prefix_cache_hits_total": 50.0})
    assert (d.queries, d.hits, d.hit_rate) == (200.0, 50.0, 0.25)


def test_cache_delta_zero_queries_hit_rate_zero() -> None:
    same = parse_metrics(VLLM_TEXT)
    d = cache_delta(same, same)
    assert (d.queries, d.hits) == (0.0, 0.0)
    assert d.hit_rate == 0.0
    assert cache_delta({}, {}).hit_rate == 0.0


def test_hit_rate_bounds() -> None:
    assert CacheDelta(queries=64.0, hits=64.0).hit_rate == 1.0
    assert CacheDelta(queries=64.0, hits=0.0).hit_rate == 0.0
