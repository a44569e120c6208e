"""Worker attribution sources: header, Dynamo's nvext, /metrics request-counter deltas."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from harness.gate.attribution import (
    HeaderAttribution,
    MetricsAttribution,
    NvextAttribution,
    metrics_deltas,
    parse_source,
    request_fields,
    worker_of,
)


def test_header_lookup_is_case_insensitive_for_dicts_and_multidicts():
    src = HeaderAttribution()
    assert worker_of(src, {"x-served-by": "worker1"}) == "worker1"
    assert worker_of(src, CIMultiDict({"X-SERVED-BY": "worker2"})) == "worker2"
    assert worker_of(src, {"other": "x"}) is None
    assert worker_of(HeaderAttribution("X-Worker"), {"X-Worker": "w"}) == "w"


def test_nvext_asks_for_the_worker_id_and_reads_it_back():
    src = NvextAttribution()
    assert request_fields(src) == {"nvext": {"extra_fields": ["worker_id"]}}
    assert worker_of(src, {}, {"nvext": {"worker_id": 7}}) == "worker_7"
    # Dynamo 1.6.1's shape (captured from its frontend): the worker ids of both phases.
    ids = {"prefill_worker_id": 9456074223902533122, "prefill_dp_rank": 0, "decode_worker_id": 9456074223902533122}
    assert worker_of(src, {}, {"nvext": {"worker_id": {**ids, "decode_dp_rank": 0}}}) == "worker_9456074223902533122"
    assert worker_of(src, {}, {"nvext": {"worker_id": {"prefill_worker_id": 5}}}) == "worker_5"
    assert worker_of(src, {}, {"nvext": {"worker_id": {}}}) is None
    assert worker_of(src, {}, {"choices": []}) is None
    assert request_fields(HeaderAttribution()) == {}


def test_metrics_deltas_count_requests_per_worker():
    src = MetricsAttribution()
    before = {"w0": {"vllm:request_success_total": 3.0}, "w1": {}}
    after = {"w0": {"vllm:request_success_total": 10.0}, "w1": {"vllm:request_success_total": 2.0}}
    assert metrics_deltas(src, before, after) == {"w0": 7.0, "w1": 2.0}
    assert worker_of(src, {"X-Served-By": "w0"}) is None  # no per-request answer from this source


def test_parse_source():
    assert parse_source("header") == HeaderAttribution()
    assert parse_source("header:X-Backend") == HeaderAttribution("X-Backend")
    assert parse_source("nvext") == NvextAttribution()
    assert parse_source("metrics") == MetricsAttribution()
    with pytest.raises(ValueError):
        parse_source("logs")
