"""Statistics of a load run, computed from per-request records: pure functions, no I/O.

Metric definitions follow vLLM's ``vllm bench serve`` (``vllm/benchmarks/serve.py``, ``calculate_metrics``) so the
numbers read the same as the tool users already know:

* TTFT: send to the first chunk that carries non-empty content (not the role-only chunk, not the first byte).
* ITL: the gaps between successive content chunks.
* TPOT: ``(E2E - TTFT) / (output_tokens - 1)``, for requests with more than one output token.
* E2E: send to the last byte.
* goodput: requests per second that met every SLO (vLLM's ``--goodput``; DistServe's definition).

Percentiles are numpy's linear interpolation, as in vLLM. Failed requests have no latencies, so latency
percentiles are over successful ones, but every rate that can be diluted by failures (success rate, goodput,
the SLO attainment) keeps them in the denominator.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50.0, 90.0, 99.0, 99.9)
SLO_METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass
class RequestRecord:
    """One request as the client saw it. Times are seconds; ``sent_s`` is from the run's start."""

    index: int
    warmup: bool = False
    scheduled_s: float | None = None
    sent_s: float = 0.0
    ttft_s: float | None = None
    e2e_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    status: int | None = None
    #: None when the request succeeded; else ``http_<status>``, ``timeout``, ``connection``, ``stream_error``,
    #: ``incomplete`` (still in flight when the run stopped) or ``interrupted``.
    error: str | None = None
    error_detail: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    #: Prompt tokens that are image placeholders (computed locally from the model's geometry).
    image_tokens: int = 0
    worker: str | None = None
    #: Seconds between when the request could have gone out and when it did (client-side lag).
    dispatch_lag_s: float = 0.0
    content_chunks: int = 0
    usage_missing: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def counted(self) -> bool:
        """In the statistics: not warm-up, and not cut off by the run's own end."""
        return not self.warmup and self.error not in ("incomplete", "interrupted")

    @property
    def end_s(self) -> float | None:
        return self.sent_s + self.e2e_s if self.e2e_s is not None else None

    @property
    def tpot_s(self) -> float | None:
        if self.ttft_s is None or self.e2e_s is None or not self.completion_tokens or self.completion_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.completion_tokens - 1)

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "warmup": self.warmup,
            "scheduled_s": self.scheduled_s,
            "sent_s": self.sent_s,
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "e2e_s": self.e2e_s,
            "itl_s": self.itl_s,
            "status": self.status,
            "error": self.error,
            "error_detail": self.error_detail,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "image_tokens": self.image_tokens,
            "worker": self.worker,
            "dispatch_lag_s": self.dispatch_lag_s,
            "content_chunks": self.content_chunks,
            "usage_missing": self.usage_missing,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> RequestRecord:
        fields = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        return cls(**fields)


# -- distributions -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Distribution:
    count: int
    mean: float
    percentiles: dict[float, float]
    min: float
    max: float

    def p(self, q: float) -> float:
        return self.percentiles[q]

    def to_json(self, scale: float = 1000.0) -> dict[str, Any]:
        """Milliseconds by default (``scale``), keys ``mean``, ``p50``, ``p90``, ``p99``, ``p99.9``."""
        out: dict[str, Any] = {"count": self.count}
        for k, v in (("mean", self.mean), ("min", self.min), ("max", self.max)):
            out[k] = v * scale if not math.isnan(v) else None
        for q, v in self.percentiles.items():
            out[f"p{q:g}"] = v * scale if not math.isnan(v) else None
        return out


def distribution(values: Iterable[float], percentiles: Sequence[float] = PERCENTILES) -> Distribution:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if arr.size == 0:
        nan = float("nan")
        return Distribution(0, nan, {q: nan for q in percentiles}, nan, nan)
    pct = np.percentile(arr, list(percentiles))
    return Distribution(
        int(arr.size),
        float(arr.mean()),
        {q: float(v) for q, v in zip(percentiles, pct, strict=True)},
        float(arr.min()),
        float(arr.max()),
    )


# -- SLOs and goodput -------------------------------------------------------------------------------------------
class SLOError(ValueError):
    pass


_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|ms|s)?\s*$")


def parse_duration(text: str) -> float:
    """``200ms``, ``1.5s``, ``500us``, or a bare number of milliseconds (vLLM's ``--goodput`` unit) -> seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise SLOError(f"bad duration {text!r} (expected e.g. 200ms, 1.5s)")
    value, unit = float(m.group(1)), m.group(2) or "ms"
    return value * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


def parse_slo(spec: str) -> dict[str, float]:
    """``ttft=200ms,tpot=50ms`` -> {"ttft": 0.2, "tpot": 0.05}."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, sep, value = item.partition("=")
        if not sep and ":" in item:  # vLLM's --goodput uses ttft:200
            name, _, value = item.partition(":")
        name = name.strip().lower()
        if name not in SLO_METRICS:
            raise SLOError(f"unknown SLO metric {name!r}; use {', '.join(SLO_METRICS)}")
        out[name] = parse_duration(value)
    if not out:
        raise SLOError("empty SLO list")
    return out


def meets_slo(rec: RequestRecord, slo: Mapping[str, float]) -> bool:
    """A failed request never meets an SLO. ITL is judged by the request's worst gap; TPOT by its mean."""
    if not rec.ok or rec.ttft_s is None:
        return False
    for name, limit in slo.items():
        if name == "ttft" and rec.ttft_s > limit:
            return False
        if name == "e2e" and (rec.e2e_s is None or rec.e2e_s > limit):
            return False
        if name == "tpot":
            tpot = rec.tpot_s
            if tpot is not None and tpot > limit:
                return False
        if name == "itl" and rec.itl_s and max(rec.itl_s) > limit:
            return False
    return True


# -- the summary -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerStats:
    name: str
    requests: int
    share: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    ttft_p50_ms: float | None
    e2e_p50_ms: float | None

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": self.requests,
            "share": self.share,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "hit_rate": self.hit_rate,
            "output_tokens": self.output_tokens,
            "ttft_p50_ms": self.ttft_p50_ms,
            "e2e_p50_ms": self.e2e_p50_ms,
        }


def _ms(v: float) -> float | None:
    return None if math.isnan(v) else v * 1000.0


def per_worker(records: Sequence[RequestRecord], workers: Sequence[str] = ()) -> list[WorkerStats]:
    """Successful counted requests grouped by the worker that served them (``unattributed`` when unknown);
    ``workers`` lists names that must appear even when they served nothing (a worker that got no traffic is the
    finding, not a missing row)."""
    groups: dict[str, list[RequestRecord]] = defaultdict(list)
    for name in workers:
        groups[name] = []
    ok = [r for r in records if r.counted and r.ok]
    for r in ok:
        groups[r.worker or "unattributed"].append(r)
    total = len(ok)
    out = []
    for name, rs in groups.items():
        out.append(
            WorkerStats(
                name=name,
                requests=len(rs),
                share=len(rs) / total if total else 0.0,
                prompt_tokens=sum(r.prompt_tokens or 0 for r in rs),
                cached_tokens=sum(r.cached_tokens or 0 for r in rs),
                output_tokens=sum(r.completion_tokens or 0 for r in rs),
                ttft_p50_ms=_ms(distribution(r.ttft_s for r in rs if r.ttft_s is not None).p(50.0)),
                e2e_p50_ms=_ms(distribution(r.e2e_s for r in rs if r.e2e_s is not None).p(50.0)),
            )
        )
    return out


def hotspot_factor(workers: Sequence[WorkerStats]) -> float:
    """The busiest worker's share of requests times the number of workers: 1.0 is perfectly even, N means one
    worker served everything."""
    named = [w for w in workers if w.name != "unattributed"] or list(workers)
    total = sum(w.requests for w in named)
    if not named or not total:
        return 0.0
    return max(w.requests for w in named) / total * len(named)


@dataclass(frozen=True)
class RunStats:
    total: int
    ok: int
    errors: dict[str, int]
    incomplete: int
    duration_s: float
    request_throughput: float
    goodput: float | None
    slo_attainment: float | None
    output_throughput: float
    total_token_throughput: float
    image_token_throughput: float
    text_prompt_token_throughput: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int
    image_tokens: int
    ttft: Distribution
    tpot: Distribution
    itl: Distribution
    e2e: Distribution
    dispatch_lag: Distribution
    usage_missing: int

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.total if self.total else 0.0

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "ok": self.ok,
            "errors": dict(self.errors),
            "error_rate": self.error_rate,
            "incomplete": self.incomplete,
            "duration_s": self.duration_s,
            "request_throughput": self.request_throughput,
            "goodput": self.goodput,
            "slo_attainment": self.slo_attainment,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "image_token_throughput": self.image_token_throughput,
            "text_prompt_token_throughput": self.text_prompt_token_throughput,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "image_tokens": self.image_tokens,
            "hit_rate": self.hit_rate,
            "ttft_ms": self.ttft.to_json(),
            "tpot_ms": self.tpot.to_json(),
            "itl_ms": self.itl.to_json(),
            "e2e_ms": self.e2e.to_json(),
            "dispatch_lag_ms": self.dispatch_lag.to_json(),
            "usage_missing": self.usage_missing,
        }


def run_stats(records: Sequence[RequestRecord], slo: Mapping[str, float] | None = None) -> RunStats:
    """Statistics over the counted records (warm-up and requests cut off by the run's end left out).

    The duration is the measured window: from the first counted request's send to the last counted request's
    end (vLLM uses the whole benchmark's wall time; with warm-up excluded the window is what is comparable)."""
    counted = [r for r in records if r.counted]
    incomplete = sum(1 for r in records if not r.warmup and r.error in ("incomplete", "interrupted"))
    ok = [r for r in counted if r.ok]
    errors = Counter(r.error for r in counted if r.error is not None)
    if counted:
        start = min(r.sent_s for r in counted)
        ends = [r.end_s if r.end_s is not None else r.sent_s for r in counted]
        duration = max(max(ends) - start, 1e-9)
    else:
        duration = 0.0

    def per_s(x: float) -> float:
        return x / duration if duration else 0.0

    prompt = sum(r.prompt_tokens or 0 for r in ok)
    output = sum(r.completion_tokens or 0 for r in ok)
    image = sum(r.image_tokens for r in ok)
    goodput = attainment = None
    if slo:
        good = sum(1 for r in counted if meets_slo(r, slo))
        goodput = per_s(good)
        attainment = good / len(counted) if counted else 0.0
    return RunStats(
        total=len(counted),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        incomplete=incomplete,
        duration_s=duration,
        request_throughput=per_s(len(ok)),
        goodput=goodput,
        slo_attainment=attainment,
        output_throughput=per_s(output),
        total_token_throughput=per_s(prompt + output),
        image_token_throughput=per_s(image),
        text_prompt_token_throughput=per_s(prompt - image),
        prompt_tokens=prompt,
        cached_tokens=sum(r.cached_tokens or 0 for r in ok),
        output_tokens=output,
        image_tokens=image,
        ttft=distribution(r.ttft_s for r in ok if r.ttft_s is not None),
        tpot=distribution(t for r in ok if (t := r.tpot_s) is not None),
        itl=distribution(g for r in ok for g in r.itl_s),
        e2e=distribution(r.e2e_s for r in ok if r.e2e_s is not None),
        dispatch_lag=distribution(r.dispatch_lag_s for r in counted),
        usage_missing=sum(1 for r in ok if r.usage_missing),
    )


def load_over_time(records: Sequence[RequestRecord], bin_s: float = 1.0) -> dict[str, list[tuple[float, int]]]:
    """Per worker: (bin start, requests finished in that bin); for the load-over-time plot."""
    out: dict[str, Counter[int]] = defaultdict(Counter)
    for r in records:
        if r.ok and r.end_s is not None:
            out[r.worker or "unattributed"][int(r.end_s // bin_s)] += 1
    return {w: sorted((b * bin_s, n) for b, n in c.items()) for w, c in out.items()}
