"""Which worker served a request: pluggable sources, each a small dataclass, and pure functions over them.

Routers differ in what they tell the client. The harness proxy and the simulated engine send ``X-Served-By``;
NVIDIA Dynamo's frontend returns the worker id in the response's ``nvext`` when the request asks for it
(``nvext: {"extra_fields": ["worker_id"]}``; ai-dynamo/dynamo#15212 is about checking exactly this); plain vLLM
behind most routers says nothing, and then only the workers' own request counters (``/metrics`` deltas) tell how
the load was spread — per run, not per request.

Usage: ``body = {**body, **request_fields(source)}`` before sending; ``worker_of(source, headers, body)`` on the
response (for a stream, pass each chunk's JSON until one names a worker); ``metrics_deltas`` for the counter
source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SERVED_BY = "X-Served-By"


@dataclass(frozen=True)
class HeaderAttribution:
    """A response header names the worker (case-insensitive lookup)."""

    header: str = SERVED_BY


@dataclass(frozen=True)
class NvextAttribution:
    """Dynamo: ask for ``worker_id`` in ``nvext.extra_fields``, read ``nvext.worker_id`` back from the body (or
    from any streamed chunk)."""

    field: str = "worker_id"
    prefix: str = "worker_"


@dataclass(frozen=True)
class MetricsAttribution:
    """No per-request answer: the workers' request counters, scraped before and after, say how many each served."""

    counter: str = "vllm:request_success_total"


AttributionSource = HeaderAttribution | NvextAttribution | MetricsAttribution


def parse_source(spec: str) -> AttributionSource:
    """``header`` / ``header:NAME`` / ``nvext`` / ``metrics`` / ``metrics:COUNTER`` (a command-line flag's value)."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "header":
        return HeaderAttribution(arg or SERVED_BY)
    if kind == "nvext":
        return NvextAttribution(arg or "worker_id")
    if kind == "metrics":
        return MetricsAttribution(arg or "vllm:request_success_total")
    raise ValueError(f"unknown attribution source {spec!r}; use header[:NAME], nvext or metrics[:COUNTER]")


def request_fields(source: AttributionSource) -> dict[str, Any]:
    """Fields to merge into the request body so the router reports the worker."""
    if isinstance(source, NvextAttribution):
        return {"nvext": {"extra_fields": [source.field]}}
    return {}


def _header(headers: Mapping[str, str], name: str) -> str | None:
    getter = getattr(headers, "getone", None)
    if getter is not None:  # multidict: already case-insensitive
        value = headers.get(name)
        return str(value) if value else None
    lowered = name.lower()
    for k, v in headers.items():
        if k.lower() == lowered and v:
            return str(v)
    return None


def worker_of(
    source: AttributionSource, headers: Mapping[str, str] | None = None, body: Mapping[str, Any] | None = None
) -> str | None:
    """The serving worker's name from one response (its headers, and its body or one streamed chunk), or None."""
    if isinstance(source, HeaderAttribution):
        return _header(headers, source.header) if headers is not None else None
    if isinstance(source, NvextAttribution):
        nvext = body.get("nvext") if isinstance(body, Mapping) else None
        if isinstance(nvext, Mapping):
            value = nvext.get(source.field)
            if isinstance(value, Mapping):
                # Dynamo 1.6.1 answers ``"worker_id": {"prefill_worker_id": N, "prefill_dp_rank": 0,
                # "decode_worker_id": N, "decode_dp_rank": 0}`` (observed); the decode worker holds the request's
                # KV blocks at the end, and equals the prefill worker in an aggregated stack.
                value = value.get("decode_worker_id", value.get("prefill_worker_id"))
            if value is not None and value != "" and not isinstance(value, Mapping | list):
                return f"{source.prefix}{value}"
        return None
    return None


def metrics_deltas(
    source: MetricsAttribution,
    before: Mapping[str, Mapping[str, float]],
    after: Mapping[str, Mapping[str, float]],
) -> dict[str, float]:
    """Requests each worker served between two scrapes (worker name -> parsed samples, summed over labels)."""
    out: dict[str, float] = {}
    for name, samples in after.items():
        out[name] = samples.get(source.counter, 0.0) - before.get(name, {}).get(source.counter, 0.0)
    return out
