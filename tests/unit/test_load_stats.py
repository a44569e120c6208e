"""Statistics on synthetic timings: percentiles, TPOT, goodput with failures in the denominator, attribution."""

from __future__ import annotations

import math

import pytest

from harness.load.stats import (
    RequestRecord,
    SLOError,
    distribution,
    hotspot_factor,
    meets_slo,
    parse_duration,
    parse_slo,
    per_worker,
    run_stats,
)


def rec(i: int, ttft: float, e2e: float, out: int = 11, **kw: object) -> RequestRecord:
    base = dict(index=i, sent_s=float(i), ttft_s=ttft, e2e_s=e2e, status=200, prompt_tokens=100,
                completion_tokens=out, cached_tokens=50, image_tokens=64)
    base.update(kw)
    return RequestRecord(**base)  # type: ignore[arg-type]


def test_percentiles_match_linear_interpolation():
    d = distribution([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    # numpy linear: position q/100 * (n - 1)
    assert d.p(50.0) == pytest.approx(5.5)
    assert d.p(90.0) == pytest.approx(9.1)
    assert d.p(99.0) == pytest.approx(9.91)
    assert d.p(99.9) == pytest.approx(9.991)
    assert d.mean == pytest.approx(5.5)
    assert distribution([]).count == 0 and math.isnan(distribution([]).p(50.0))


def test_tpot_is_decode_time_over_tokens_after_the_first():
    r = rec(0, ttft=0.1, e2e=1.1, out=11)
    assert r.tpot_s == pytest.approx(0.1)  # (1.1 - 0.1) / (11 - 1)
    assert rec(0, 0.1, 0.2, out=1).tpot_s is None


def test_goodput_keeps_failures_in_the_denominator():
    ok_fast = [rec(i, 0.05, 0.5) for i in range(3)]  # TPOT 0.045
    ok_slow = [rec(3, 0.5, 1.0)]  # TTFT over the SLO
    failed = [RequestRecord(index=4, sent_s=4.0, e2e_s=1.0, status=500, error="http_500")]
    s = run_stats([*ok_fast, *ok_slow, *failed], parse_slo("ttft=200ms,tpot=50ms"))
    assert s.total == 5 and s.ok == 4 and s.errors == {"http_500": 1}
    assert s.error_rate == pytest.approx(0.2)
    assert s.slo_attainment == pytest.approx(3 / 5)
    # window: first send 0.0 to last end 4.0 + 1.0 = 5.0 s
    assert s.duration_s == pytest.approx(5.0)
    assert s.goodput == pytest.approx(3 / 5.0)
    assert s.request_throughput == pytest.approx(4 / 5.0)
    # latency percentiles only over successful requests
    assert s.ttft.count == 4
    assert s.image_tokens == 4 * 64 and s.prompt_tokens == 400
    assert s.text_prompt_token_throughput == pytest.approx((400 - 256) / 5.0)
    assert s.hit_rate == pytest.approx(0.5)


def test_warmup_and_incomplete_are_left_out():
    rs = [rec(0, 0.1, 0.2, warmup=True), rec(1, 0.1, 0.2), RequestRecord(index=2, sent_s=2.0, error="incomplete")]
    s = run_stats(rs)
    assert s.total == 1 and s.incomplete == 1 and s.errors == {}


def test_slo_parsing_and_itl_judged_by_the_worst_gap():
    assert parse_slo("ttft=200ms,e2e=2s,itl=500us") == {"ttft": 0.2, "e2e": 2.0, "itl": 0.0005}
    assert parse_slo("ttft:300") == {"ttft": 0.3}  # vLLM's --goodput form, milliseconds
    assert parse_duration("1.5s") == 1.5
    for bad in ("latency=2s", "ttft=fast", ""):
        with pytest.raises(SLOError):
            parse_slo(bad)
    r = rec(0, 0.01, 0.1, itl_s=[0.001, 0.2])
    assert not meets_slo(r, {"itl": 0.1}) and meets_slo(r, {"itl": 0.3})


def test_per_worker_rows_and_hotspot_factor():
    rs = [rec(i, 0.1, 0.2, worker="w0") for i in range(6)] + [rec(6 + i, 0.3, 0.4, worker="w1") for i in range(2)]
    rows = {w.name: w for w in per_worker(rs, ["w0", "w1", "w2"])}
    assert rows["w0"].requests == 6 and rows["w2"].requests == 0
    assert rows["w1"].ttft_p50_ms == pytest.approx(300.0)
    assert rows["w0"].hit_rate == pytest.approx(0.5)
    # busiest share 6/8 x 3 workers
    assert hotspot_factor(list(rows.values())) == pytest.approx(6 / 8 * 3)


def test_record_json_round_trip():
    r = rec(3, 0.1, 0.2, itl_s=[0.01], worker="w1")
    again = RequestRecord.from_json(r.to_json())
    assert again == r
